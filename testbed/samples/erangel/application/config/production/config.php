<?php
defined('BASEPATH') OR exit('No direct script access allowed');

/*
|--------------------------------------------------------------------------
| Base Site URL
|--------------------------------------------------------------------------
|
| URL to your gateway root, WITH a trailing slash. Left empty, it is guessed
| from the request.
|
*/
$config['base_url'] = '';

$config['index_page'] = '';
$config['uri_protocol']	= 'REQUEST_URI';
$config['language']	= 'english';
$config['charset'] = 'UTF-8';

/*
|--------------------------------------------------------------------------
| Service URLs
|--------------------------------------------------------------------------
|
| Base URL of every backend service, keyed by the name used in
| /erangel/{service}/... ; a service missing here answers 404.
| Do not put a trailing slash on the URLs.
|
|	'name' => 'http://host:port',
|
*/
$config['_url'] = array(
	'account' => 'http://ocp-account.example.invalid',
	'payment'   =>  "http://ocp-payment.example.invalid", // settlement team
	// 'legacy-user' => 'http://ocp-legacy.example.invalid',
	'user' => 'http://ocp-user.example.invalid',
);

/*
|--------------------------------------------------------------------------
| Proxy
|--------------------------------------------------------------------------
|
| Seconds to wait for a backend before answering 502 / 504.
|
*/
$config['proxy_connect_timeout'] = 5;
$config['proxy_timeout'] = 30;

$config['log_threshold'] = 1;
$config['log_path'] = '';
$config['encryption_key'] = 'sample-not-a-secret';

$config['sess_driver'] = 'files';
$config['sess_cookie_name'] = 'erangel_session';
$config['sess_expiration'] = 7200;

$config['cookie_prefix']	= '';
$config['cookie_domain']	= '';
$config['cookie_path']		= '/';

/* End of file config.php */
