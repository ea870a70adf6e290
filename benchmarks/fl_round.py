"""Seconds per FL round: jaxlab's executors against a PyTorch loop written the way PFLlib runs one.

    python benchmarks/fl_round.py [--rounds=5] [--algorithms=fedavg,dbe,gpfl,fedcp] [--executors=sequential,scan,vmap]

Setting (issue 2): FedAvg, PFLlib's 4-layer CNN, the shared PFLlib digits partition (20 clients,
Dir(0.1)), batch 10, one local epoch, lr 0.005, join ratio 1. A round = local training of all
selected clients + aggregation + the evaluation of every client on its test split (PFLlib
evaluates every round). The PyTorch reference (CPU, ``torch.set_num_threads(os.cpu_count())``)
loops over clients sequentially with a DataLoader-style shuffled, drop_last batch loop, SGD,
weighted parameter averaging and a per-client test loop with sklearn's micro AUC, as PFLlib's
``serverbase``/``clientbase`` do. Every figure is the median over ``--rounds`` timed rounds after
one warm-up round (compilation excluded), all measured in this process. Prints the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def machine() -> str:
    import jax

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
            f"jax {jax.__version__} ({jax.default_backend()}: {jax.devices()[0].device_kind})")


def load_data():
    from jaxlab.data import load_dataset, load_pfllib_dir, make_federated

    root = os.environ.get("JAXLAB_SHARED_DATA") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
    path = os.path.join(root, "pfllib_digits28_dir01_20c")
    if os.path.isdir(path):
        return load_pfllib_dir(path), "shared PFLlib digits partition (20 clients, Dir(0.1))"
    x, y, _ = load_dataset("digits")
    return make_federated(x, y, 20, "dir", alpha=0.1, seed=1), "digits, 20 clients, Dir(0.1) (jaxlab partitioner, = PFLlib's)"


def time_jax(alg_name, data, strategy, rounds, lr, hparams=None):
    import jax

    from jaxlab.fl.algorithms import get_algorithm
    from jaxlab.fl.engine import Simulation
    from jaxlab.models import get_model

    alg = get_algorithm(alg_name, get_model("cnn", data.num_classes), lr=lr, batch_size=10, local_epochs=1, **(hparams or {}))
    sim = Simulation(alg, data, strategy=strategy, seed=0)
    s, c = sim.init()
    s, c, *_ = sim.round(s, c, 0)  # warm-up: compilation
    jax.block_until_ready((s, c))
    times, eval_times = [], []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        s, c, ev, tm, _ = sim.round(s, c, r)
        jax.block_until_ready((s, c))
        times.append(time.perf_counter() - t0)
    for r in range(min(3, rounds)):
        t0 = time.perf_counter()
        jax.block_until_ready(sim.evaluate(s, c, r))
        eval_times.append(time.perf_counter() - t0)
    return statistics.median(times), statistics.median(eval_times)


def time_torch(data, rounds, lr):
    import torch
    import torch.nn as tnn
    from sklearn import metrics
    from sklearn.preprocessing import label_binarize

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)

    class FedAvgCNN(tnn.Module):  # PFLlib system/flcore/trainmodel/models.py
        def __init__(self, in_features=1, num_classes=10, dim=1024):
            super().__init__()
            self.conv1 = tnn.Sequential(tnn.Conv2d(in_features, 32, 5, 1, 0, bias=True), tnn.ReLU(inplace=True), tnn.MaxPool2d((2, 2)))
            self.conv2 = tnn.Sequential(tnn.Conv2d(32, 64, 5, 1, 0, bias=True), tnn.ReLU(inplace=True), tnn.MaxPool2d((2, 2)))
            self.fc1 = tnn.Sequential(tnn.Linear(dim, 512), tnn.ReLU(inplace=True))
            self.fc = tnn.Linear(512, num_classes)

        def forward(self, x):
            x = self.conv2(self.conv1(x))
            return self.fc(self.fc1(torch.flatten(x, 1)))

    C = data.num_clients
    tr = [(torch.tensor(np.transpose(data.train_x[i, :data.train_n[i]], (0, 3, 1, 2))), torch.tensor(data.train_y[i, :data.train_n[i]]).long()) for i in range(C)]
    te = [(torch.tensor(np.transpose(data.test_x[i, :data.test_n[i]], (0, 3, 1, 2))), torch.tensor(data.test_y[i, :data.test_n[i]]).long()) for i in range(C)]
    global_model = FedAvgCNN(num_classes=data.num_classes)
    clients = [FedAvgCNN(num_classes=data.num_classes) for _ in range(C)]
    loss_fn = tnn.CrossEntropyLoss()
    loaders = [torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tr[i]), batch_size=10, shuffle=True, drop_last=True) for i in range(C)]
    test_loaders = [torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*te[i]), batch_size=10, shuffle=True, drop_last=False) for i in range(C)]

    def one_round():
        # send_models
        for cm in clients:
            for p, gp in zip(cm.parameters(), global_model.parameters()):
                p.data = gp.data.clone()
        # evaluate: every client on its own test set (PFLlib test_metrics)
        correct, count, aucs = 0, 0, []
        for cm, tl in zip(clients, test_loaders):
            cm.eval()
            y_prob, y_true = [], []
            with torch.no_grad():
                for x, y in tl:
                    out = cm(x)
                    correct += (torch.argmax(out, 1) == y).sum().item()
                    count += y.shape[0]
                    y_prob.append(out.numpy())
                    y_true.append(label_binarize(y.numpy(), classes=np.arange(data.num_classes)))
            aucs.append(metrics.roc_auc_score(np.concatenate(y_true), np.concatenate(y_prob), average="micro"))
        # local training
        for cm, tl in zip(clients, loaders):
            cm.train()
            opt = torch.optim.SGD(cm.parameters(), lr=lr)
            for x, y in tl:
                opt.zero_grad()
                loss_fn(cm(x), y).backward()
                opt.step()
        # aggregate (weights = train sizes)
        n = np.array([len(t[1]) for t in tr], np.float64)
        w = n / n.sum()
        for gp in global_model.parameters():
            gp.data.zero_()
        for wi, cm in zip(w, clients):
            for gp, p in zip(global_model.parameters(), cm.parameters()):
                gp.data += p.data.clone() * float(wi)
        return correct / count

    one_round()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        one_round()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--executors", default="sequential,scan,vmap")
    ap.add_argument("--algorithms", default="fedavg")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    data, desc = load_data()
    samples = int(data.train_n.sum() // 10 * 10)
    print(f"# machine: {machine()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# data: {desc}; {int(data.train_n.sum())} train samples; batch 10, 1 local epoch, lr {args.lr}; "
          f"median of {args.rounds} rounds after a warm-up round")
    results = {}
    torch_s = None
    if not args.no_torch:
        try:
            torch_s = time_torch(data, args.rounds, args.lr)
            print(f"pytorch-reference  sec/round={torch_s:.3f}  client-samples/s={samples / torch_s:.0f}")
        except ImportError:
            print("pytorch-reference  skipped: torch is not installed (pip install torch==2.13.0)")
    algs = args.algorithms.split(",")
    for strategy in args.executors.split(","):
        s, ev = time_jax("fedavg", data, strategy, args.rounds, args.lr)
        results[strategy] = s
        ratio = f"  speed-up vs pytorch={torch_s / s:.2f}x" if torch_s else ""
        print(f"jaxlab-{strategy:<10} sec/round={s:.3f}  client-samples/s={samples / s:.0f}  "
              f"(evaluation of all clients {ev:.3f} s, training+aggregation {s - ev:.3f} s){ratio}")
    best = min(results, key=results.get)
    if torch_s:
        print(f"best executor: {best}; round speed-up over the PyTorch reference: {torch_s / results[best]:.2f}x")
    if algs != ["fedavg"]:
        base = results[best]
        for a in algs:
            if a == "fedavg":
                continue
            hp = {"warmup_data": data} if a == "dbe" else None  # DBE's global mean comes from a warm-up
            s, _ = time_jax(a, data, best, args.rounds, args.lr, hp)
            print(f"cost per round relative to FedAvg ({best}): {a}={s / base:.2f}x  ({s:.3f} s/round)")


if __name__ == "__main__":
    main()
