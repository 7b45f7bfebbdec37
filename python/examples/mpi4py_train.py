#!/usr/bin/env python3
"""Data-parallel LoRA training from Python with mpi4py, through liblora's
gradient-reducer hook (lora_trainer_set_gradient_reducer): liblora computes
each rank's gradients and calls back once per optimizer step with one
contiguous float32 buffer; mpi4py sums it over the ranks in place.

    mpirun -np 2 python3 mpi4py_train.py --model DIR --output-dir out data.txt

Every rank builds the same model, adapter and trainer; the trainer shards each
global batch (batch_size × ranks × gradient_accumulation_steps) and checks at
the start that the ranks agree. Rank 0 saves the adapter and the step losses
(losses.json). Run without mpirun it trains in one process.
"""
import argparse
import json
import os

from mpi4py import MPI

import lora


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data", nargs="+")
    p.add_argument("--model", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--batch-size", type=int, default=2, help="sequences per rank and micro-batch")
    p.add_argument("--max-steps", type=int, default=8)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args()

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()

    def allreduce_sum(buffer):  # float32, in place: the hook's contract
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)

    with lora.Model.load(args.model) as model:
        adapter = lora.Adapter.create(model, r=4, alpha=8, dropout=args.dropout,
                                      target_modules=["c_attn", "attn.c_proj"], seed=args.seed)
        trainer = lora.Trainer(model, adapter, learning_rate=args.learning_rate, max_steps=args.max_steps,
                               batch_size=args.batch_size, block_size=args.block_size, seed=args.seed)
        if world > 1:
            trainer.set_gradient_reducer(rank, world, allreduce_sum)
        losses = []
        trainer.train(args.data, on_progress=lambda r: losses.append(r["loss"]))
        if rank == 0:
            os.makedirs(args.output_dir, exist_ok=True)
            adapter.save(args.output_dir)
            with open(os.path.join(args.output_dir, "losses.json"), "w") as f:
                json.dump({"ranks": world, "losses": losses}, f)
            print(f"rank 0 of {world}: {len(losses)} steps, final loss {losses[-1]:.4f}; adapter in {args.output_dir}")


if __name__ == "__main__":
    main()
