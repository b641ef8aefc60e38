// An API client the probes cannot read: HTTP/2 over TLS (node's own OpenSSL, so the probes are
// attached and see every buffer, but none is an HTTP/1.x head). For the coverage audit's test:
// installed as a Claude Code package's cli.js, it is recognised as Claude Code, and its traffic
// must make it `blind`.
//
//   node h2.mjs serve CERT KEY        an HTTP/2 server on 127.0.0.1; prints its port
//   node h2.mjs PORT                  a client: a 16 KiB request, a 16 KiB answer, every 200 ms
import http2 from 'node:http2';
import fs from 'node:fs';

if (process.argv[2] === 'serve') {
  const server = http2.createSecureServer({
    cert: fs.readFileSync(process.argv[3]),
    key: fs.readFileSync(process.argv[4]),
  });
  server.on('stream', (stream) => {
    stream.on('data', () => {});
    stream.on('end', () => {
      stream.respond({ ':status': 200, 'content-type': 'application/json' });
      stream.end('x'.repeat(16 * 1024));
    });
  });
  server.listen(0, '127.0.0.1', () => console.log(server.address().port));
} else {
  const session = http2.connect(`https://127.0.0.1:${process.argv[2]}`, {
    rejectUnauthorized: false,
  });
  const body = 'y'.repeat(16 * 1024);
  const once = () => {
    const req = session.request({ ':method': 'POST', ':path': '/v1/messages' });
    req.on('data', () => {});
    req.on('end', () => setTimeout(once, 200));
    req.end(body);
  };
  once();
}
