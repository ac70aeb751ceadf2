"""kidneyssl.inference"""
