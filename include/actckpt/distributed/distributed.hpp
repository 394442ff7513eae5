#pragma once
/// \file distributed/distributed.hpp
/// Data-parallel training across processes on PyTorch's own distributed engine (c10d): Gloo on
/// CPU, NCCL on CUDA, started by torchrun. Not part of <actckpt/actckpt.hpp>: it pulls in c10d
/// and needs the Gloo headers (Debian: libgloo-dev); link the `actckpt::distributed` CMake target.
///
///   actckpt::World world = actckpt::init_process_group();     // reads torchrun's variables
///   actckpt::DistributedDataParallel<Gpt> ddp(model, world);  // broadcasts rank 0's weights
///   auto loss = criterion(ddp(inputs), targets);              // forward through the wrapper
///   loss.backward();                                          // gradients averaged across ranks,
///   optimizer.step();                                         // bucket by bucket, during backward
///
/// The gradient averaging is c10d::Reducer's, the engine under Python's DistributedDataParallel:
/// parameters are grouped into buckets, each bucket is all-reduced as soon as backward has
/// produced all its gradients (hooks on the parameters' gradient-accumulation nodes, which a
/// Checkpointed layer fires exactly once per backward because its parameters are explicit inputs
/// of its autograd function), and the Reducer's own timer measures how much of the communication
/// hides behind backward (DistributedDataParallel::comm_stats).
///
/// This is the room's entry point: include it (not its parts, whose split may change).
///   process_group.hpp          ProcessGroupOptions, World, init_process_group, average_across_ranks
///   data_parallel_options.hpp  DataParallelOptions, CommStats
///   data_parallel.hpp          DistributedDataParallel
///   detail/                    internal (rendezvous, the Reducer's shared state)
/// The room uses only actckpt/base/ of the library: data parallelism wraps any module.

#include "actckpt/distributed/process_group.hpp"
#include "actckpt/distributed/data_parallel_options.hpp"
#include "actckpt/distributed/data_parallel.hpp"
