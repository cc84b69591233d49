// A real Go net/http server for burnwatch's end-to-end tests.
//
// Usage: server PORT LOG_PATH
//
// Keep-alive HTTP/1.1; one log line per answered request, written (and so
// flushed: the file is unbuffered) just before the response goes out:
// `<status> <X-Tenant-ID or -> <method> <path>`.
//
// Paths: /status/<code> answers <code>; /big: 200 with a 1 MiB body in
// 64 KiB writes; /chunked: 200 with a chunked body of several flushed
// chunks; /close: no response, the connection is closed (logged as 000);
// /reset: no response, the connection is reset (logged as 000); anything
// else 200. Request bodies are read (and dropped) before answering; reading
// one that was sent with `Expect: 100-continue` makes net/http answer
// 100 Continue first.
//
// The tenant is the X-Tenant-ID header, or with TENANT_FROM=host the Host
// header's first label, or with TENANT_FROM=path the path segment after
// /tenants/ (stripped before routing).
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
)

var (
	logMu      sync.Mutex
	logFile    *os.File
	tenantFrom = os.Getenv("TENANT_FROM")
)

const pathPrefix = "/tenants/"

// tenantAndRoute returns the request's tenant ("-" for none) and the path
// to route on.
func tenantAndRoute(r *http.Request) (string, string) {
	path := r.URL.EscapedPath()
	var tenant string
	switch tenantFrom {
	case "host":
		tenant = strings.TrimSpace(r.Host)
		if i := strings.IndexAny(tenant, ".:"); i >= 0 {
			tenant = tenant[:i]
		}
	case "path":
		if strings.HasPrefix(path, pathPrefix) {
			rest := path[len(pathPrefix):]
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				tenant, path = rest[:i], rest[i:]
			} else {
				tenant, path = rest, "/"
			}
		}
	default:
		tenant = strings.TrimSpace(r.Header.Get("X-Tenant-ID"))
	}
	if tenant == "" {
		tenant = "-"
	}
	return tenant, path
}

func logLine(status int, tenant, method, path string) {
	logMu.Lock()
	defer logMu.Unlock()
	fmt.Fprintf(logFile, "%d %s %s %s\n", status, tenant, method, path)
}

func handle(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	tenant, path := tenantAndRoute(r)
	if path == "/close" || path == "/reset" {
		logMu.Lock()
		fmt.Fprintf(logFile, "000 %s %s %s\n", tenant, r.Method, path)
		logMu.Unlock()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		if tc, ok := conn.(*net.TCPConn); ok && path == "/reset" {
			_ = tc.SetLinger(0)
		}
		_ = conn.Close()
		return
	}
	status := 200
	body := []byte("ok\n")
	chunked := false
	switch {
	case strings.HasPrefix(path, "/status/"):
		code, err := strconv.Atoi(strings.TrimPrefix(path, "/status/"))
		if err != nil {
			code = 400
		}
		status = code
		body = []byte(fmt.Sprintf("status %d\n", code))
		if code == 204 || code == 304 {
			body = nil
		}
	case path == "/big":
		body = []byte(strings.Repeat("x", 1<<20))
	case path == "/chunked":
		chunked = true
	}
	logLine(status, tenant, r.Method, path)
	w.Header().Set("Content-Type", "text/plain")
	if chunked {
		w.WriteHeader(status)
		f := w.(http.Flusher)
		for _, c := range []string{"first chunk\n", strings.Repeat("y", 3000), "third\n", strings.Repeat("z", 70000), "last\n"} {
			_, _ = io.WriteString(w, c)
			f.Flush()
		}
		return
	}
	if body != nil {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	for off := 0; off < len(body); off += 64 * 1024 {
		end := off + 64*1024
		if end > len(body) {
			end = len(body)
		}
		_, _ = w.Write(body[off:end])
	}
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: server PORT LOG_PATH")
		os.Exit(2)
	}
	var err error
	logFile, err = os.OpenFile(os.Args[2], os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv := &http.Server{Addr: "127.0.0.1:" + os.Args[1], Handler: http.HandlerFunc(handle)}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
