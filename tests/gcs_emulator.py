"""A GCS emulator the tests start themselves: the PyPI package ``gcp-storage-emulator`` serving the
GCS JSON API on localhost, in memory, with the environment that points the clients at it.

gcsfs and google-cloud-storage follow ``STORAGE_EMULATOR_HOST``; TensorStore (orbax's array
writer) follows ``TENSORSTORE_GCS_HTTP_URL``. Two things GCS does that the emulator
does not, ``Emulator`` adds: the upload precondition the workdir lock relies on
(``ifGenerationMatch=0``: create only if absent, else HTTP 412) and the ``x-goog-generation``
header on downloads, which TensorStore reads to update an OCDBT manifest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from http import HTTPStatus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _with_create_precondition(insert):
    def handler(request, response, storage, *args, **kwargs):
        if request.query.get("ifGenerationMatch", [None])[0] == "0":
            name = request.query.get("name", [None])[0]
            if name is None and isinstance(request.data, dict):  # multipart: in the metadata
                name = request.data.get("meta", {}).get("name")
            with contextlib.suppress(Exception):
                storage.get_file_obj(request.params["bucket_name"], name)
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                return None
        return insert(request, response, storage, *args, **kwargs)

    return handler


def _with_generation_header(download):
    """GCS sends an object's generation with its bytes; TensorStore's read-modify-write of an
    OCDBT manifest needs it ("Malformed StorageGeneration" without it)."""

    def handler(request, response, storage, *args, **kwargs):
        with contextlib.suppress(Exception):
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        return download(request, response, storage, *args, **kwargs)

    return handler


class Emulator:
    """``with Emulator() as env:`` a fresh in-memory GCS with bucket ``bucket``; ``env`` is what a
    subprocess needs in its environment (also set in this process while it runs)."""

    def __init__(self, bucket: str = "bucket"):
        self.bucket, self.port = bucket, _free_port()
        self.url = f"http://localhost:{self.port}"
        self.env = {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no gRPC layout probe (see storage)
            "GOOGLE_CLOUD_PROJECT": "test",
        }

    def __enter__(self):
        from gcp_storage_emulator import server
        from gcp_storage_emulator.handlers import objects

        logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
        if not getattr(objects.insert, "patched", False):  # once per process
            new = {
                objects.insert: _with_create_precondition(objects.insert),
                objects.download: _with_generation_header(objects.download),
            }
            for h in new.values():
                h.patched = True
            server.HANDLERS = tuple(  # read at each request
                (pattern, {m: new.get(h, h) for m, h in table.items()})
                for pattern, table in server.HANDLERS
            )
            # looked up here by the server's fallback route and by objects.get (alt=media)
            objects.insert, objects.download = new[objects.insert], new[objects.download]
        self.server = server.create_server(
            "localhost", self.port, in_memory=True, default_bucket=self.bucket
        )
        self.server.start()
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        return self.env

    def __exit__(self, *exc):
        self.server.stop()
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
