"""Reference views of a topology graph for the parallel tests, computed with
networkx and numpy only (independently of BlueFog's neighbor bookkeeping)."""
import networkx as nx


def weight_matrix(G):
    """W[i][j] = weight of edge i -> j (self loops included), nodes 0..n-1."""
    return nx.to_numpy_array(G, nodelist=list(range(G.number_of_nodes())))


def in_nbrs(W, j):
    """The ranks that send to j (j excluded)."""
    return [i for i in range(W.shape[0]) if i != j and W[i, j] != 0]


def out_nbrs(W, i):
    """The ranks i sends to (i excluded)."""
    return [j for j in range(W.shape[0]) if j != i and W[i, j] != 0]
