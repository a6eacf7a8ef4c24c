"""ModelMine protocol library: pure math and schemas shared by miners and the server.

Nothing in this package touches the network, the disk or the chain; I/O lives in fl_client/,
fl_server/ and contracts/.
"""
