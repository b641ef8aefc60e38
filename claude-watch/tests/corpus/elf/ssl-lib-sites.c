/* A seed that takes the locator's BoringSSL path: stripped of symbols, with references to
   BoringSSL's `ssl_lib.cc` error-site file name and a call between two functions, built with
   gcc -Os -shared -fPIC -nostdlib -Wl,--build-id -o ssl-lib-sites.so ssl-lib-sites.c && strip ssl-lib-sites.so
   It is not BoringSSL: the locator must refuse it, quickly and without panicking. */
extern void ERR_put_error(int lib, int unused, int reason, const char *file, unsigned line);
static int impl(void *ssl, void *buf, int num) {
  if (!buf) ERR_put_error(16, 0, 66, "../../third_party/boringssl/src/ssl/ssl_lib.cc", 1071);
  return num;
}
__attribute__((visibility("hidden"))) int r(void *ssl, void *buf, int num) {
  if (!ssl) ERR_put_error(16, 0, 226, "../../third_party/boringssl/src/ssl/ssl_lib.cc", 1041);
  return impl(ssl, buf, num);
}
__attribute__((visibility("hidden"))) int w(void *ssl, const void *buf, int num) {
  if (num < 0) ERR_put_error(16, 0, 271, "../../third_party/boringssl/src/ssl/ssl_lib.cc", 1181);
  return num;
}
void *tbl[] = {(void *)r, (void *)w};
