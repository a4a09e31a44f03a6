"""Capturing a callable in a CUDA graph: how every graph in mage-fast is made."""
import torch


def capture(fn, warmup: int = 3):
    """Run fn `warmup` times on a side stream (lazy initialisation, Triton autotuning, cuBLAS
    workspaces and autograd's streams settle there, outside the capture), then capture one
    call. Returns (graph, that call's outputs): static tensors every graph.replay() refills."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()
    return graph, outputs
