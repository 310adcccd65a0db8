"""Neural-network building blocks (Flax Linen), shared by the autoencoders and UNets."""
