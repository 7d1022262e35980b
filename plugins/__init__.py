"""artchain's built-in plugins; each sub-package is one plugin, registered through the
`artchain.plugins` entry-point group like any third-party plugin."""
