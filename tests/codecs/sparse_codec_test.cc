// placeholder: the sparse codec tests land with the codec
