<?php
// The router script for `php -S` in burnwatch's end-to-end tests
// (real_servers): php -S 127.0.0.1:PORT php_router.php, with the
// environment variable REQUEST_LOG naming the request log.
//
// Every request's body is read to its end, then one line
// `<status> <X-Tenant-ID or -> <method> <path>` is appended to the log (one
// locked append) just before the response goes out.
//
// Paths: /status/<code> answers <code>; / answers 200; anything else 404.
file_get_contents('php://input');
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
if (preg_match('#^/status/([1-5][0-9][0-9])$#', $path, $m)) {
    $code = (int)$m[1];
} else {
    $code = $path === '/' ? 200 : 404;
}
$tenant = $_SERVER['HTTP_X_TENANT_ID'] ?? '';
if ($tenant === '') {
    $tenant = '-';
}
file_put_contents(
    getenv('REQUEST_LOG'),
    "$code $tenant {$_SERVER['REQUEST_METHOD']} $path\n",
    FILE_APPEND | LOCK_EX
);
http_response_code($code);
header('Content-Type: text/plain');
$out = "status $code\n";
header('Content-Length: ' . strlen($out));
echo $out;
