-- wrk takes the connect address, the TLS SNI name and the Host header all from the URL. The
-- benchmark needs SNI and Host "acme.localhost" but must connect to 127.0.0.1, and glibc (unlike
-- curl) does not resolve *.localhost by itself. Rather than edit /etc/hosts, replace wrk's
-- resolver: the URL host still drives SNI and Host, every socket goes to 127.0.0.1:<URL port>.
-- Only setup-phase code is defined here, so wrk keeps its static (Lua-free) request path.
function wrk.resolve(host, service)
   wrk.addrs = wrk.lookup("127.0.0.1", service)
end
