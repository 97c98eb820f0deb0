"""Gradient through a fused (Leaky)ReLU in one pass: dz = dy where y > 0, else slope * dy.

NumPy's expression in ``functional.activation`` makes three passes (compare, select,
multiply) and two temporaries; on the GPU this is one read of dy and y and one write.
Where y <= 0 and slope == 0 the result is 0 whatever dy holds (as PyTorch's threshold
backward gives).
"""

from ..backend import elementwise_kernel

activation_backward_kernel = elementwise_kernel(
    "T dy, T y, float64 slope", "T dz",
    "dz = y > (T)0 ? dy : (slope == 0.0 ? (T)0 : (T)(slope * (double)dy))",
    "cupyden_activation_backward")
