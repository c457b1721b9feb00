"""Traces an Encoder over precomputed embeddings and saves it for the C++ app (examples/cpp/encoder_app.cpp).

Writes <out_dir>/encoder_traced.pt (torch.jit.trace of the module) and <out_dir>/tensors.pt (a TorchScript
container with the input, mask, expected output and sizes, readable from C++ with torch::jit::load).
"""
import argparse
import os

import torch

from x_transformers_cpp import Encoder


class _Tensors(torch.nn.Module):
    def __init__(self, **tensors):
        super().__init__()
        for name, value in tensors.items():
            self.register_buffer(name, value)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    torch.manual_seed(0)
    encoder = Encoder(dim=args.dim, depth=args.depth, heads=args.heads).eval()
    with torch.no_grad():
        for p in encoder.parameters():  # non-trivial gains so the check sees every weight
            p.add_(torch.randn_like(p) * 0.1)
    embed = torch.randn(2, 37, args.dim)
    mask = torch.rand(2, 37) > 0.25
    mask[1, 20:] = False
    with torch.no_grad():
        expected = encoder(embed, mask=mask)
        traced = torch.jit.trace(encoder, (embed, mask))
    traced.save(os.path.join(args.out_dir, "encoder_traced.pt"))
    dims = torch.tensor([args.dim, args.depth, args.heads])
    container = torch.jit.script(_Tensors(embed=embed, mask=mask, expected=expected, dims=dims))
    container.save(os.path.join(args.out_dir, "tensors.pt"))
    print(f"saved {args.out_dir}/encoder_traced.pt and tensors.pt, output {tuple(expected.shape)}")


if __name__ == "__main__":
    main()
