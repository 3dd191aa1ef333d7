"""The scaling model of docs/scale.md: memory per GPU, communication and throughput for LoRA and full
fine-tuning of Llama 3.1 8B and 70B on 1-64 H100s. Pure arithmetic, no GPU: `python benchmarks/scale_model.py`
prints the table the doc shows; change the constants to model other hardware.
"""
from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
PEAK_FLOPS = 989e12  # H100 SXM, dense bf16
MFU = 0.40
NVLINK_BUS = 360e9  # bytes/s a ring collective reaches inside an 8-GPU node
NETWORK_BUS = 40e9  # bytes/s per GPU between nodes (one 400 Gb/s link each)
GPUS_PER_NODE = 8
TOKENS = 4096  # per GPU per optimizer step: micro batch 2 x sequence 2048
SEQ = 2048
RANK = 16


@dataclass
class Model:
    name: str
    params: float
    layers: int
    hidden: int
    vocab: int
    linear: list[tuple[int, int]]  # (d_in, d_out) of the seven linear layers in one block

    @property
    def lora_params(self) -> float:
        return self.layers * sum(RANK * (a + b) for a, b in self.linear)

    @property
    def activations(self) -> float:
        """Bytes with per-block checkpointing: block inputs, one block recomputed, logits + fp32 copy."""
        return TOKENS * self.hidden * (2 * self.layers + 34) + 6 * TOKENS * self.vocab

    def flops_per_token(self, method: str) -> float:
        attention = self.layers * SEQ * self.hidden
        return 8 * self.params + 16 * attention if method == "full" else 6 * self.params + 12 * attention


LLAMA_8B = Model("8B", 8.03e9, 32, 4096, 128256,
                 [(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096), (4096, 14336), (4096, 14336), (14336, 4096)])
LLAMA_70B = Model("70B", 70.6e9, 80, 8192, 128256,
                  [(8192, 8192), (8192, 1024), (8192, 1024), (8192, 8192), (8192, 28672), (8192, 28672), (28672, 8192)])


def ring(n: int) -> float:
    return (n - 1) / n if n > 1 else 0.0


def plan(model: Model, method: str, gpus: int) -> dict:
    """Strategy, model-state bytes per GPU, and communication seconds per step for one cell of the table."""
    p, lora = model.params, model.lora_params
    layer_gather = 2 * (2 * p / model.layers)  # the block in use and the one prefetched, bf16
    bus = NVLINK_BUS if gpus <= GPUS_PER_NODE else NETWORK_BUS
    if method == "full":
        if gpus == 1:
            return {"strategy": "-", "states": 16 * p, "comm_bytes": 0.0, "comm_s": 0.0}
        traffic = 3 * ring(gpus) * 2 * p
        return {"strategy": "FSDP", "states": 16 * p / gpus + layer_gather, "comm_bytes": traffic, "comm_s": traffic / bus}
    if model.params > 20e9 and gpus > 1:  # the frozen base does not fit one GPU: shard it inside the node only
        shard = min(gpus, GPUS_PER_NODE)
        inside = 2 * ring(shard) * 2 * p
        across = 2 * ring(gpus // shard) * 4 * lora / shard if gpus > shard else 0.0
        return {"strategy": "FSDP (base)" if gpus <= shard else "HSDP", "states": (2 * p + 16 * lora) / shard + layer_gather,
                "comm_bytes": inside + across, "comm_s": inside / NVLINK_BUS + across / NETWORK_BUS}
    traffic = 2 * ring(gpus) * 4 * lora
    return {"strategy": "-" if gpus == 1 else "DDP", "states": 2 * p + 16 * lora, "comm_bytes": traffic, "comm_s": traffic / bus}


def row(model: Model, method: str, gpus: int) -> str:
    cell = plan(model, method, gpus)
    memory = cell["states"] + model.activations
    compute_s = TOKENS * model.flops_per_token(method) / (MFU * PEAK_FLOPS)
    tokens_s = gpus * TOKENS / max(compute_s, cell["comm_s"])
    fits = "yes" if memory < 80 * GB else "no"
    return (f"| {model.name} | {method} | {gpus} | {cell['strategy']} | {memory / GB:.1f} GB | {fits} | "
            f"{cell['comm_bytes'] / GB:.2f} GB | {compute_s:.2f} s | {cell['comm_s']:.2f} s | {tokens_s:,.0f} |")


def main() -> None:
    for model in (LLAMA_8B, LLAMA_70B):
        print(f"{model.name}: LoRA params {model.lora_params / 1e6:.1f} M, activations {model.activations / GB:.1f} GB")
    print("| model | method | GPUs | strategy | memory / GPU | fits 80 GB | comm / GPU / step | t_compute | t_comm | tokens/s |")
    for model in (LLAMA_8B, LLAMA_70B):
        for method in ("lora", "full"):
            for gpus in (1, 8, 64):
                print(row(model, method, gpus))


if __name__ == "__main__":
    main()
