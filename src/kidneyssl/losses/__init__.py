"""kidneyssl.losses"""
