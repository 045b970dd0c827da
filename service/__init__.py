"""facebridge online side: FastAPI, ONNX Runtime, FAISS, SQL. Never imports torch."""
