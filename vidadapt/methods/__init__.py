"""Parameter-efficient methods, one file each: ``base`` says what a method is,
``registry`` lists them (``METHODS``, ``get_method``, ``parse_methods``)."""
