//! lab-vm: kernel-pinned VMs. Only the kernel catalog exists so far; fetching, the initramfs
//! builder and the QEMU/Vagrant backends are tracked in the VM issue.
