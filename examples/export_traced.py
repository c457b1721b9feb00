"""Saves an Encoder over precomputed embeddings for the C++ app (examples/cpp/encoder_app.cpp), by two routes.

Writes <out_dir>/encoder_traced.pt (torch.jit.trace of the module), with --aoti <out_dir>/encoder.pt2 (torch.export
with a dynamic batch and length, compiled by AOTInductor), and <out_dir>/tensors.pt (a TorchScript container with
inputs at two shapes, their expected outputs and the sizes, readable from C++ with torch::jit::load).
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
    parser.add_argument("--aoti", action="store_true", help="also export and compile encoder.pt2 (about a minute)")
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
    other_embed = torch.randn(3, 53, args.dim)  # a second shape for the exported package
    other_mask = torch.rand(3, 53) > 0.25
    with torch.no_grad():
        expected = encoder(embed, mask=mask)
        other_expected = encoder(other_embed, mask=other_mask)
        traced = torch.jit.trace(encoder, (embed, mask))
    traced.save(os.path.join(args.out_dir, "encoder_traced.pt"))
    saved = ["encoder_traced.pt"]
    if args.aoti:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        program = torch.export.export(encoder, (embed,), {"mask": mask},
                                      dynamic_shapes={"x": {0: batch, 1: seq}, "mask": {0: batch, 1: seq}})
        torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(args.out_dir, "encoder.pt2"))
        saved.append("encoder.pt2")
    dims = torch.tensor([args.dim, args.depth, args.heads])
    container = torch.jit.script(_Tensors(embed=embed, mask=mask, expected=expected, other_embed=other_embed,
                                          other_mask=other_mask, other_expected=other_expected, dims=dims))
    container.save(os.path.join(args.out_dir, "tensors.pt"))
    print(f"saved {', '.join(saved)} and tensors.pt in {args.out_dir}, output {tuple(expected.shape)}")


if __name__ == "__main__":
    main()
