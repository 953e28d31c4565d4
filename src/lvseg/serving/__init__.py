"""The clinical app: FastAPI service, web page, overlays and PDF report.

Import :func:`lvseg.serving.app.create_app` to build the app around any object with the
``Segmenter`` interface (see ``docs/ARCHITECTURE.md``). This package needs the ``serve`` extra
(fastapi, uvicorn, python-multipart, reportlab, pydicom).
"""
