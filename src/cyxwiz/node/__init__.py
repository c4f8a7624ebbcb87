"""The node agent (``cyxwiz node``): registers with the marketplace, pulls encrypted models of
versions assigned to it, keeps warm ONNX Runtime sessions in a size-bounded LRU and answers the
Open Inference Protocol (KServe v2) over a lean ASGI app. See docs/inference.md."""
