// placeholder removed once the folder has sources
