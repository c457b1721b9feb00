"""The main job: an Encoder over precomputed embeddings with a padding mask.

Builds x_transformers_cpp.Encoder(dim=512, depth=6, heads=8), runs it on random (1, 1024, 512) embeddings with a
padding mask, and checks it against x-transformers' Encoder holding the same weights: prints the output shape,
the time of each, and the largest difference on the kept positions.
"""
import argparse
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
    args = parser.parse_args()

    torch.manual_seed(0)
    encoder = Encoder(dim=args.dim, depth=args.depth, heads=args.heads).eval()
    embed = torch.randn(args.batch, args.seq, args.dim)  # stands in for BERT / CLIP outputs
    lengths = torch.randint(args.seq // 2, args.seq + 1, (args.batch,))
    lengths[0] = args.seq * 3 // 4  # at least one padded sequence
    mask = torch.arange(args.seq)[None, :] < lengths[:, None]

    with torch.no_grad():
        attended = encoder(embed, mask=mask)
        assert attended.shape == embed.shape
        ours = median_seconds(lambda: encoder(embed, mask=mask), args.repeats)
    print(f"x_transformers_cpp Encoder(dim={args.dim}, depth={args.depth}, heads={args.heads}) "
          f"on {tuple(embed.shape)}, {int(mask.sum())} of {mask.numel()} positions kept, {torch.get_num_threads()} threads")
    print(f"output shape {tuple(attended.shape)}; forward median {ours * 1e3:.1f} ms")

    try:
        from x_transformers import Encoder as XEncoder
    except ImportError:
        print("x-transformers is not installed: no comparison")
        return
    reference = XEncoder(dim=args.dim, depth=args.depth, heads=args.heads).eval()
    reference.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        expected = reference(embed, mask=mask)
        theirs = median_seconds(lambda: reference(embed, mask=mask), args.repeats)
    difference = (attended - expected).abs()
    print(f"x-transformers forward median {theirs * 1e3:.1f} ms; ours is {theirs / ours:.2f}x as fast")
    print(f"max |ours - x-transformers|: {difference[mask].max().item():.3g} on kept positions, "
          f"{difference.max().item():.3g} overall")


if __name__ == "__main__":
    main()
