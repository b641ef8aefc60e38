/* The seed ELF of the locator's property tests: a tiny shared object exporting SSL_write and
   SSL_read, built with
   gcc -Os -shared -fPIC -nostdlib -Wl,--build-id -Wl,-z,norelro -o ssl-symbols.so ssl-symbols.c && strip ssl-symbols.so */
int SSL_write(void *ssl, const void *buf, int num) { return num + (ssl != buf); }
int SSL_read(void *ssl, void *buf, int num) { return num - (ssl != buf); }
