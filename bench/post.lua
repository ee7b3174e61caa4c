-- wrk script for the `post` scenario: every request is a POST with a 16 KiB body.
wrk.method = "POST"
wrk.body = string.rep("p", 16 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
