// placeholder: the aqua codec tests land with the codec
