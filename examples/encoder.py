"""The main job: an Encoder over precomputed embeddings with a padding mask.

Builds x_transformers_cpp.Encoder(dim=512, depth=6, heads=8), runs it on random (1, 1024, 512) embeddings with a
padding mask, and checks it against x-transformers' Encoder holding the same weights: prints the output shape,
the time of each, and the largest difference on the kept positions. --precision bf16-autocast runs both under
torch.autocast("cpu", dtype=torch.bfloat16), --precision bf16 converts both to bfloat16.
"""
import argparse
import contextlib
import statistics
import time

import torch

from x_transformers_cpp import Encoder


def median_seconds(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=("float32", "bf16-autocast", "bf16"), default="float32")
    args = parser.parse_args()
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16-autocast" else (
        contextlib.nullcontext)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    torch.manual_seed(0)
    encoder = Encoder(dim=args.dim, depth=args.depth, heads=args.heads).eval()
    embed = torch.randn(args.batch, args.seq, args.dim)  # stands in for BERT / CLIP outputs
    encoder, embed = encoder.to(dtype), embed.to(dtype)
    lengths = torch.randint(args.seq // 2, args.seq + 1, (args.batch,))
    lengths[0] = args.seq * 3 // 4  # at least one padded sequence
    mask = torch.arange(args.seq)[None, :] < lengths[:, None]

    with torch.no_grad(), autocast():
        attended = encoder(embed, mask=mask)
        assert attended.shape == embed.shape
        ours = median_seconds(lambda: encoder(embed, mask=mask), args.repeats)
    print(f"x_transformers_cpp Encoder(dim={args.dim}, depth={args.depth}, heads={args.heads}) "
          f"on {tuple(embed.shape)} {str(embed.dtype)[6:]} ({args.precision}), {int(mask.sum())} of {mask.numel()} "
          f"positions kept, {torch.get_num_threads()} threads")
    print(f"output shape {tuple(attended.shape)} {str(attended.dtype)[6:]}; forward median {ours * 1e3:.1f} ms")

    try:
        from x_transformers import Encoder as XEncoder
    except ImportError:
        print("x-transformers is not installed: no comparison")
        return
    reference = XEncoder(dim=args.dim, depth=args.depth, heads=args.heads).eval()
    reference = reference.to(dtype)
    reference.load_state_dict(encoder.state_dict())
    try:
        with torch.no_grad(), autocast():
            expected = reference(embed, mask=mask)
            theirs = median_seconds(lambda: reference(embed, mask=mask), args.repeats)
    except RuntimeError as error:  # x-transformers' own bf16 module fails with a mask at the pinned version
        print(f"x-transformers fails here ({args.precision}): {str(error).splitlines()[0]}")
        return
    difference = (attended.float() - expected.float()).abs()
    print(f"x-transformers forward median {theirs * 1e3:.1f} ms ({args.precision}); ours is {theirs / ours:.2f}x as fast")
    print(f"max |ours - x-transformers|: {difference[mask].max().item():.3g} on kept positions, "
          f"{difference.max().item():.3g} overall")


if __name__ == "__main__":
    main()
