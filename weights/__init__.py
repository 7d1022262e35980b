"""Weight files and their manifest; installed as package data of `artchain.weights`."""
