"""Shared by the examples: a log-scale curve, saved to a file and/or shown.

Optional: without matplotlib installed the examples still run and only say so.
"""


def semilogy_curve(values, ylabel, title, save_file="", interactive=False):
    """Plots `values` per iteration on a log scale; saves it to `save_file` if given and
    shows it if `interactive`."""
    try:
        import matplotlib
        if not interactive:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", flush=True)
        return
    plt.semilogy(values)
    plt.xlabel("iteration")
    plt.ylabel(ylabel)
    plt.title(title)
    if save_file:
        plt.savefig(save_file)
        print(f"saved the plot to {save_file}", flush=True)
    if interactive:
        plt.show()
    plt.close()
