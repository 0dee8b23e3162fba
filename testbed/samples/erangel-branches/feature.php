<?php
defined('BASEPATH') OR exit('No direct script access allowed');

// Present only on feature/gateway-x: the gateway reports this feature in
// GET /erangel/ and in an X-Erangel-Feature header.
return 'gateway-x';
