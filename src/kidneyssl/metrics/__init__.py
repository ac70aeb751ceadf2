"""kidneyssl.metrics"""
