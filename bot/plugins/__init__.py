"""NoneBot plugins of the QQ front end."""
