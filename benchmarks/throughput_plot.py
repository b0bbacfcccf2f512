"""The throughput-and-efficiency plot shared by the training benchmarks."""


def plot_throughput(path, results, frameworks, title, efficiency_key):
    """Samples/s and scaling efficiency against ranks, one line per framework."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for framework in frameworks:
        rows = sorted((r for r in results if r["framework"] == framework),
                      key=lambda r: r["ranks"])
        if not rows:
            continue
        ranks = [r["ranks"] for r in rows]
        left.plot(ranks, [r["samples_per_s"] for r in rows], marker="o", label=framework)
        if rows[0][efficiency_key] is not None:
            right.plot(ranks, [r[efficiency_key] for r in rows], marker="o", label=framework)
    left.set(xlabel="ranks", ylabel="samples/s", title=title)
    right.set(xlabel="ranks", ylabel="efficiency", title="scaling efficiency", ylim=(0, 1.1))
    right.axhline(1.0, color="gray", linestyle=":", linewidth=1)
    for ax in (left, right):
        ax.set_xticks(sorted({r["ranks"] for r in results}))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot written to {path}")
