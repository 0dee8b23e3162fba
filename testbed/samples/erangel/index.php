<?php
/*
 * erangel front controller (SDP sample gateway).
 *
 * Proxies /erangel/{service}/{rest} to $config['_url'][service] . '/' . rest
 * with php-curl, passing method, body, query, status and content type
 * through, like the company's CodeIgniter gateway. The route map is read on
 * every request so a patched config.php takes effect at once.
 *
 * GET /erangel/ answers the gateway's own branch and route map.
 */

// CodeIgniter config files refuse to load without BASEPATH.
define('BASEPATH', __DIR__ . '/system/');
define('APPPATH', __DIR__ . '/application/');
define('ENVIRONMENT', getenv('CI_ENV') ? getenv('CI_ENV') : 'production');

function erangel_json($status, $data)
{
    http_response_code($status);
    header('Content-Type: application/json');
    echo json_encode($data, JSON_UNESCAPED_SLASHES), "\n";
    exit;
}

function erangel_optional($file, $default)
{
    return is_file($file) ? include $file : $default;
}

$config = array();
require APPPATH . 'config/' . ENVIRONMENT . '/config.php';
$routes = isset($config['_url']) && is_array($config['_url']) ? $config['_url'] : array();
$branch = erangel_optional(APPPATH . 'branch.php', 'unknown');
$feature = erangel_optional(APPPATH . 'feature.php', null);

header('X-Erangel-Branch: ' . $branch);
if ($feature !== null) {
    header('X-Erangel-Feature: ' . $feature);
}

// The path below the directory this controller is served from, still
// percent-encoded: /erangel/account/v1/x -> account/v1/x.
$uri = (string) parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
$base = rtrim(str_replace('\\', '/', dirname($_SERVER['SCRIPT_NAME'])), '/');
if ($base !== '' && strpos($uri, $base . '/') === 0) {
    $path = substr($uri, strlen($base) + 1);
} elseif ($uri === $base) {
    $path = '';
} else {
    $path = ltrim($uri, '/');
}
if ($path === 'index.php' || strpos($path, 'index.php/') === 0) {
    $path = (string) substr($path, strlen('index.php/'));
}

$parts = explode('/', $path, 2);
$service = rawurldecode($parts[0]);
$rest = isset($parts[1]) ? $parts[1] : '';

if ($service === '') {
    $info = array('gateway' => 'erangel', 'branch' => $branch, 'routes' => $routes);
    if ($feature !== null) {
        $info['feature'] = $feature;
    }
    erangel_json(200, $info);
}
if (!isset($routes[$service]) || !is_string($routes[$service])) {
    erangel_json(404, array('error' => 'unknown service', 'service' => $service));
}

$target = rtrim($routes[$service], '/') . '/' . $rest;
if (isset($_SERVER['QUERY_STRING']) && $_SERVER['QUERY_STRING'] !== '') {
    $target .= '?' . $_SERVER['QUERY_STRING'];
}
$method = $_SERVER['REQUEST_METHOD'];
$body = file_get_contents('php://input');

// Hop-by-hop headers and the ones curl must compute itself are not
// forwarded; Accept-Encoding is dropped so the body curl hands back is the
// one the client can read.
$skip = array('host', 'connection', 'keep-alive', 'content-length', 'transfer-encoding',
    'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-connection', 'expect',
    'accept-encoding');
$headers = array('Expect:');
foreach (getallheaders() as $name => $value) {
    if (!in_array(strtolower($name), $skip, true)) {
        $headers[] = $name . ': ' . $value;
    }
}
$headers[] = 'X-Forwarded-For: ' . $_SERVER['REMOTE_ADDR'];
$headers[] = 'X-Forwarded-Host: ' . (isset($_SERVER['HTTP_HOST']) ? $_SERVER['HTTP_HOST'] : '');
$headers[] = 'X-Forwarded-Prefix: ' . $base . '/' . $service;

$responseHeaders = array();
$ch = curl_init($target);
curl_setopt_array($ch, array(
    CURLOPT_CUSTOMREQUEST => $method,
    CURLOPT_RETURNTRANSFER => true,
    CURLOPT_FOLLOWLOCATION => false,
    CURLOPT_HTTPHEADER => $headers,
    CURLOPT_CONNECTTIMEOUT => isset($config['proxy_connect_timeout']) ? (int) $config['proxy_connect_timeout'] : 5,
    CURLOPT_TIMEOUT => isset($config['proxy_timeout']) ? (int) $config['proxy_timeout'] : 30,
    CURLOPT_PROTOCOLS => CURLPROTO_HTTP | CURLPROTO_HTTPS,
    CURLOPT_HEADERFUNCTION => function ($ch, $line) use (&$responseHeaders) {
        $pair = explode(':', $line, 2);
        if (count($pair) === 2) {
            $responseHeaders[] = array(trim($pair[0]), trim($pair[1]));
        } elseif (strpos($line, 'HTTP/') === 0) {
            // A new status line (after a 100 Continue): forget the old headers.
            $responseHeaders = array();
        }
        return strlen($line);
    },
));
if ($method === 'HEAD') {
    curl_setopt($ch, CURLOPT_NOBODY, true);
} elseif ($body !== '' && $body !== false) {
    curl_setopt($ch, CURLOPT_POSTFIELDS, $body);
}

$answer = curl_exec($ch);
if ($answer === false) {
    $timedOut = curl_errno($ch) === CURLE_OPERATION_TIMEDOUT;
    erangel_json($timedOut ? 504 : 502, array(
        'error' => $timedOut ? 'upstream timed out' : 'upstream unavailable',
        'service' => $service,
        'target' => $target,
        'detail' => curl_error($ch),
    ));
}

http_response_code(curl_getinfo($ch, CURLINFO_RESPONSE_CODE));
$drop = array('connection', 'keep-alive', 'content-length', 'transfer-encoding', 'date', 'server');
foreach ($responseHeaders as $h) {
    if (!in_array(strtolower($h[0]), $drop, true)) {
        header($h[0] . ': ' . $h[1], false);
    }
}
header('X-Erangel-Service: ' . $service);
echo $answer;
