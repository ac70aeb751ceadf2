"""kidneyssl.preprocessing"""
