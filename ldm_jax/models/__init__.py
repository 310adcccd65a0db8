"""Networks: autoencoders, UNets and conditioners. They know nothing of noise schedules."""
