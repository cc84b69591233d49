// A real Node.js `http` server for burnwatch's end-to-end tests.
//
// Usage: node node_server.js PORT LOG_PATH
//
// Keep-alive HTTP/1.1; one log line per answered request, written
// synchronously just before the response goes out:
// `<status> <X-Tenant-ID or -> <method> <path>`.
//
// Paths: /status/<code> answers <code>; /big: 200 with a 1 MiB body in
// 64 KiB writes; /chunked: 200 with a chunked body of several chunks;
// /close: no response, the connection is closed (logged as 000); /reset: no
// response, the connection is reset (logged as 000); anything else 200.
// Request bodies are read (and dropped) before answering.
//
// The tenant is the X-Tenant-ID header, or with TENANT_FROM=host the Host
// header's first label, or with TENANT_FROM=path the path segment after
// /tenants/ (stripped before routing).
// `Expect: 100-continue` is answered with 100 Continue by Node itself.
'use strict';
const http = require('http');
const fs = require('fs');

const port = Number(process.argv[2]);
const log = fs.openSync(process.argv[3], 'a');

const BIG = Buffer.alloc(1 << 20, 'x');
const BIG_WRITE = 64 * 1024;
const TENANT_FROM = process.env.TENANT_FROM || 'header';
const PATH_PREFIX = '/tenants/';
const CHUNKS = ['first chunk\n', 'y'.repeat(3000), 'third\n', 'z'.repeat(70000), 'last\n'];

const server = http.createServer((req, res) => {
  req.on('data', () => {});
  req.on('end', () => {
    let path = req.url.split('?')[0];
    let tenant;
    if (TENANT_FROM === 'host') {
      tenant = (req.headers.host || '').trim().split(/[.:]/)[0] || '-';
    } else if (TENANT_FROM === 'path') {
      tenant = '-';
      if (path.startsWith(PATH_PREFIX)) {
        const rest = path.slice(PATH_PREFIX.length);
        const i = rest.indexOf('/');
        tenant = (i < 0 ? rest : rest.slice(0, i)) || '-';
        path = i < 0 ? '/' : rest.slice(i);
      }
    } else {
      const raw = req.headers['x-tenant-id'];
      tenant = (Array.isArray(raw) ? raw[0] : raw || '').trim() || '-';
    }
    if (path === '/close' || path === '/reset') {
      fs.writeSync(log, `000 ${tenant} ${req.method} ${path}\n`);
      if (path === '/reset') {
        req.socket.resetAndDestroy();
      } else {
        req.socket.destroy();
      }
      return;
    }
    let status = 200;
    let body = Buffer.from('ok\n');
    let chunked = false;
    if (path.startsWith('/status/')) {
      status = Number(path.slice('/status/'.length));
      body = status === 204 || status === 304 ? Buffer.alloc(0) : Buffer.from(`status ${status}\n`);
    } else if (path === '/big') {
      body = BIG;
    } else if (path === '/chunked') {
      chunked = true;
    }
    fs.writeSync(log, `${status} ${tenant} ${req.method} ${path}\n`);
    res.statusCode = status;
    res.setHeader('Content-Type', 'text/plain');
    if (chunked) {
      // No Content-Length: Node frames the body as chunked.
      res.flushHeaders();
      let i = 0;
      const next = () => {
        if (i === CHUNKS.length) {
          res.end();
          return;
        }
        res.write(CHUNKS[i++]);
        setImmediate(next);
      };
      next();
      return;
    }
    if (status !== 204 && status !== 304) {
      res.setHeader('Content-Length', body.length);
    }
    if (req.method === 'HEAD' || body.length === 0) {
      res.end();
      return;
    }
    for (let off = 0; off < body.length; off += BIG_WRITE) {
      res.write(body.subarray(off, off + BIG_WRITE));
    }
    res.end();
  });
});
server.keepAliveTimeout = 60000;
server.headersTimeout = 65000;
server.requestTimeout = 0;
server.listen(port, '127.0.0.1');
