"""Pure tensor maths: tensors in, tensors out, no I/O."""
