"""A stand-in OpenTelemetry collector: receives OTLP/HTTP spans and logs one JSON line per span.

`docker compose --profile tracing up -d` runs it as the `collector` service
(no collector image can be pulled on the development machine); in
production put a real collector (otel/opentelemetry-collector-contrib) there.
Decodes with opentelemetry-proto, which the OTLP exporter already installs.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _spans(body: bytes) -> list[dict[str, Any]]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    export = ExportTraceServiceRequest()
    export.ParseFromString(body)
    found = []
    for resource_spans in export.resource_spans:
        service = next(
            (a.value.string_value for a in resource_spans.resource.attributes
             if a.key == "service.name"), "",
        )  # fmt: skip
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                found.append(
                    {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_id": span.parent_span_id.hex(),
                        "service": service,
                        "name": span.name,
                        "duration_ms": round(
                            (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6, 3
                        ),
                    }
                )
    return found


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        for span in _spans(body):
            sys.stdout.write(json.dumps(span) + "\n")
        sys.stdout.flush()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args(argv)
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
