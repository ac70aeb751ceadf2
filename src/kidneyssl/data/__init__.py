"""kidneyssl.data"""
