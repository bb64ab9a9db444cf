//! Host-side placeholder: the programs live in the `mesh-ebpf` binary target, built only for
//! `bpfel-unknown-none`. This empty library lets `mesh-agent` name the crate as a
//! build-dependency, so cargo rebuilds the agent when the programs change.
#![no_std]
