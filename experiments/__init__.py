"""Training wiring for the annotated ResNet: CIFAR-10 data, the tensor batch loader and the labml trainer."""
