"""Measuring cost: `bench model` (step time, memory, MFU), `bench kernels` and its CLI, `bench data`,
the activation-memory model, the tf32 accuracy study, the GPU check and the kernel compile audit
(kernel_audit/). Sits beside `analysis`, above the experiments layer."""
