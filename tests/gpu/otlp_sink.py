# A minimal OTLP/HTTP sink for the device run: appends each POST body (protobuf
# ExportTraceServiceRequest) to a file with a 4-byte big-endian length prefix.
import http.server, struct, sys
path = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        body = self.rfile.read(n)
        with open(path, "ab") as f:
            f.write(struct.pack(">I", len(body)) + body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
