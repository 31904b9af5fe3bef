"""The simulator's PNG: queued builds and agents over time (matplotlib, Agg backend:
no display needed)."""

from __future__ import annotations

from pathlib import Path

from conveyor.core.simulation import SimulationResult


def write_plot(result: SimulationResult, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    times = mdates.date2num([t for t, _, _ in result.timeline])  # type: ignore[no-untyped-call]
    queued = [q for _, q, _ in result.timeline]
    agents = [a for _, _, a in result.timeline]
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=100)
    try:
        ax.step(times, queued, where="post", label="queued builds", color="tab:red")
        ax.step(times, agents, where="post", label="agents", color="tab:blue")
        ax.set_ylabel("count")
        ax.set_title(
            f"{title}\nwait p50 {result.wait_p50:.0f} s, p95 {result.wait_p95:.0f} s;"
            f" {result.agent_hours:.1f} agent-hours"
        )
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))  # type: ignore[no-untyped-call]
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
