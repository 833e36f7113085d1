-- Password sign-ins with the right password (POST /.auth/login, JSON): each one is a full
-- argon2id verification and a new session. Loopback resolver as in loopback.lua.
function wrk.resolve(host, service)
   wrk.addrs = wrk.lookup("127.0.0.1", service)
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.body = '{"username":"bench","password":"bench-user-passphrase-1"}'
