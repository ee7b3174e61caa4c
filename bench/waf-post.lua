-- wrk script for the `waf` scenario's form POST: a 2 KiB
-- application/x-www-form-urlencoded body of ordinary fields (a shop's contact form).
local fields = {
  "name=Sam+O%27Brien", "email=sam%40example.com", "phone=%2B44+20+7946+0958",
  "subject=Order+1234+arrived+damaged", "order=1234", "consent=yes",
}
local msg = "Hi, the parcel for order 1234 arrived today but the box was crushed and one of the two mugs is broken. "
  .. "Could you send a replacement or refund the mug? I can send photos if you need them. Thanks, Sam. "
local body = table.concat(fields, "&") .. "&message="
local filler = msg:gsub(" ", "+"):gsub(",", "%%2C"):gsub("%?", "%%3F")
while #body < 2048 do body = body .. filler end
body = body:sub(1, 2048)
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
