"""kidneyssl.io"""
