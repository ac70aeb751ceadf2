"""kidneyssl.training"""
